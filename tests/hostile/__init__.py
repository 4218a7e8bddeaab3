"""Hostile plugins and damaged files, in one place: each test using them asserts the exact outcome."""

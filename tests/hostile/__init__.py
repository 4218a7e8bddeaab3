"""Hostile input in one place: files (:mod:`tests.hostile.files`) and plugins that misbehave."""

"""An example third-party robench plugin: one module and one entry-point line in setup.cfg."""

"""robench's built-in defenses, registered under the ``robench.defenses`` entry-point group."""

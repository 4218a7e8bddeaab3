"""robench's built-in attacks, registered under the ``robench.attacks`` entry-point group."""

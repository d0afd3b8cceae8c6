"""Built-in recipes (YAML). Installed as the package ``optkit.recipes``."""

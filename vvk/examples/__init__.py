"""Built-in example data that installs with the package and needs no download."""

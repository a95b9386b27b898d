"""One module per attribution method (Captum layout); the public names are exported by ``captum_paths.attr``."""

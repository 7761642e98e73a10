"""The roof: the root pipeline config, the run report and the command line."""

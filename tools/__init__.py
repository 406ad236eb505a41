"""Developer tools of a checkout, not shipped with the package: the auto_select table
writer and the Triton compile check."""

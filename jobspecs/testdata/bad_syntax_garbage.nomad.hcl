this is { not "hcl

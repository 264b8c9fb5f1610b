"""Root-cause analysis: the service dependency graph and the ranking of candidate causes."""

"""The rank side of a run: identity, barriers, binding checks, the pipeline and the launcher."""

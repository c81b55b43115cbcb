"""Click commands, one module each; the logic they call lives elsewhere."""

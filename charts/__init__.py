"""Per-environment charts and the settings each environment renders from."""

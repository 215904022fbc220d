"""Model fixtures (tiny_config, tiny_model); filled by the model area."""

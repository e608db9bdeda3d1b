"""Validation: toy sets with synthetic anomalies, the challenge's metric, pictures, the demo."""

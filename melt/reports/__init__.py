"""One JSON report per incident: assembly, evidence selection and validation."""

"""Explanations of incidents: facts, prompt providers (openai) and the offline template provider."""

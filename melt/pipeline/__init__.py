"""The runs that wire the stages together: batch detect and train, rolling refits, trace-model workflows."""

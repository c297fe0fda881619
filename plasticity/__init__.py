"""Plasticity: silent-neuron diagnostics, reset methods and non-stationary training schedules."""

"""The ground floor: the data model (bundle and frame schemas, score and report schemas), the
detector contract, the plugin registry, calibration, configuration, errors, time and progress.

Imports nothing else from melt; every other layer, and every stage (``detectors``, ``rca``,
``explain``, ``synth``), builds on it. Plugins import its public names from ``melt``.
"""

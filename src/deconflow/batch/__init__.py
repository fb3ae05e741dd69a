"""Batch processing for the command line: many files, resumable, optionally on Dask.

- :mod:`~deconflow.batch.command`: the ``deconflow batch`` subcommand.
- :mod:`~deconflow.batch.task`: one file's task (picklable for Dask workers).
- :mod:`~deconflow.batch.runner`: serial / LocalCluster / scheduler execution, progress, log.
- :mod:`~deconflow.batch.files`: input expansion, output names, hashes.
- :mod:`~deconflow.batch.settings`: ``--config`` plus flags, commented default YAML.
"""

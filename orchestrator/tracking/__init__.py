"""MLflow: the run lifecycle on the driver and the rank-0 metric writer (``run``, ``writer``);
reference logs imported as runs (``logfiles``, ``importer``); runs compared as tables and curves
(``compare``, ``compare_table``, ``compare_plot``); the MLflow UI on this machine (``ui``)."""

"""Command-line helpers of this project (demo, chaos, local Airflow settings); importable by the tests."""

"""One module per task id of the two DAGs, each holding the function the task calls (named after it): plain
functions of paths, config objects and the upstream tasks' XCom results, so tests call them without Airflow."""

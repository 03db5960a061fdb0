"""Every example's workflows and activities, registered by one import: for the web page
and the worker.

    tinyworkflow server --import-workflows examples.workflows     # from the checkout's root
    tinyworkflow worker --import-workflows examples/workflows.py  # or by file, from anywhere
    python examples/workflows.py                                  # lists what it registers

Importing the examples only registers their workflows and activities; each example's
own ``main()`` runs only when the file is run as a script.
"""

import importlib

EXAMPLES = ["ai_content_pipeline", "ai_document_processor", "approval_workflow",
            "asyncio_races", "child_workflows", "crash_recovery", "database_configuration", "durable_timer",
            "parallel_workflow", "retry_workflow", "saga_booking", "scheduling_workflow",
            "signals", "simple_workflow", "versioning"]

for _name in EXAMPLES:
    if __package__:  # imported as examples.workflows
        importlib.import_module(f".{_name}", __package__)
    else:  # run, or imported by its path: this folder is on sys.path
        importlib.import_module(_name)

if __name__ == "__main__":
    from tinyworkflow import TinyWorkflowClient

    client = TinyWorkflowClient()  # not opened: the registry is this process's
    workflows, activities = client.list_registered_workflows(), client.list_registered_activities()
    print(f"{len(workflows)} workflows: {', '.join(workflows)}")
    print(f"{len(activities)} activities: {', '.join(activities)}")

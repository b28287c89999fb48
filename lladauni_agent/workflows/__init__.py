"""YAML workflows: visual-reasoning pipelines as data, validated at load and compiled to the
agent layer's LangGraph graphs (issue 8). The schema is documented in ``workflows/README.md``.

    wf = load_workflow("workflows/draw-check-refine.yaml")   # WorkflowError: file:line:col: ...
    wf = load_workflow(path, limits=WorkflowLimits(max_depth=200))  # limits: file size, YAML, templates
    result = run_workflow(wf, {"prompt": "a red fox"}, backend, run_dir="out")
"""

from .compiler import WorkflowContext, WorkflowState, compile_workflow
from .functions import BUILTIN_FUNCTIONS, register_function, registered_functions, unregister_function
from .loader import Issue, Workflow, WorkflowError, bundled_workflows, check_inputs, load_workflow, loads_workflow
from .runner import resume_workflow, run_workflow
from .schema import WorkflowLimitError, WorkflowLimits, WorkflowSpec, workflow_json_schema
from .templates import TemplateRunError

__all__ = [
    "BUILTIN_FUNCTIONS",
    "Issue",
    "Workflow",
    "WorkflowContext",
    "TemplateRunError",
    "WorkflowError",
    "WorkflowLimitError",
    "WorkflowLimits",
    "WorkflowSpec",
    "WorkflowState",
    "bundled_workflows",
    "check_inputs",
    "compile_workflow",
    "load_workflow",
    "loads_workflow",
    "register_function",
    "registered_functions",
    "resume_workflow",
    "run_workflow",
    "unregister_function",
    "workflow_json_schema",
]

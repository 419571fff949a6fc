"""What a loop's LLM reads: the task and a program's next-step prompt, rendered from templates."""

from evaluator.prompt.render import FORMATS, Subject, render_prompt, render_task, stored_subject, task_context

__all__ = ["FORMATS", "Subject", "render_prompt", "render_task", "stored_subject", "task_context"]

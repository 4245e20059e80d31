"""Synthesized instruction and preference data: code snippets -> instructions, answers and unit tests from
an OpenAI-compatible server, verified in the sandbox, scored by a judge; see docs/synth.md."""

"""Tool calling on local models: what the template gets, what grammar holds the answer, and
which parser reads the calls back out of the model's text.

`plan.plan_tools(request, template)` decides it all once per request, before anything is
generated (a schema the grammar cannot enforce is a 400 naming the tool, raised there):

| template        | tool_choice        | template gets                    | grammar             | parser   |
|-----------------|--------------------|----------------------------------|---------------------|----------|
| a family's      | auto               | `tools`, the history             | none (model free)   | family's |
| a family's      | required, function | `tools`, the history             | the family's format | family's |
| a family's      | none               | the history                      | none                | none     |
| no tool support | auto, required, fn | the envelope's system prompt     | the envelope        | generic  |
| no tool support | none               | the history, calls as text       | none                | none     |

A request without tools and without a tool history gets no plan: the plain path, no parser.

Modules: families.py (which format a template speaks), one parser per family (hermes.py,
llama3.py, mistral.py, generic.py) on base.py and jsonstream.py, prompt.py (the messages a
template gets), grammar.py (the GBNF that holds an answer, built with the engine's JSON schema
converter), plan.py (all of it for one request).
"""

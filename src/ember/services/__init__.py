"""Protocol-neutral serving logic shared by the OpenAI and Ollama APIs."""

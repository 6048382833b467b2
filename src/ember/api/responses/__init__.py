"""/v1/responses: the OpenAI Responses API over the gateway, with stored, continuable responses."""

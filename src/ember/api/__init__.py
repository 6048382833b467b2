"""Wire protocols: translate HTTP requests to service calls and results back."""

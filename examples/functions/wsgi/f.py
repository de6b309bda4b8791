"""A WSGI app: it sees the whole request (method, sub-path, query, headers, body)."""
import json


def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length).decode()
    reply = {
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "header": environ.get("HTTP_X_DEMO", ""),
        "body": body,
    }
    start_response("201 Created", [("Content-Type", "application/json"), ("X-App", "wsgi")])
    return [json.dumps(reply).encode()]

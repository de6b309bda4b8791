# helloworld.Greeter/SayHello: event is HelloRequest as JSON ({"name": ...}),
# the returned dict is encoded as HelloReply.
def f(event):
    return {"message": "Hello " + event.get("name", "")}

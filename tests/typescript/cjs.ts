// Right and wrong uses of the declarations, from a CommonJS module: tsc must
// pass, so every line marked @ts-expect-error must be an error.
import WS4Redis = require("twisted-ws4redis");

const socket = WS4Redis({
    uri: "ws://localhost/ws/foobar?subscribe-broadcast&publish-broadcast",
    connecting: () => {},
    connected: () => socket.send_message("Hello"),
    receive_message: (data) => {
        if (typeof data === "string") console.log(data.length);
        else if (data instanceof ArrayBuffer) console.log(data.byteLength);
        else console.log(data.size);
    },
    disconnected: (event) => console.log(event.code, event.reason),
    heartbeat_msg: "--heartbeat--",
    heartbeat_interval: 5,
    max_reconnect_delay: 30,
    binary_type: "blob",
});
const constructed: WS4Redis.Socket = new WS4Redis({ uri: "ws://localhost/ws/foobar", heartbeat_msg: null });
const state: WS4Redis.ReadyState = constructed.get_state();
console.log(state, socket.is_connecting(), socket.is_connected(), socket.is_closing(), socket.is_closed());
socket.send_message(new Uint8Array([1, 2, 3]));
socket.close();

const client: WS4Redis.Client = WS4Redis.connect({
    uri: "ws://localhost/ws/",
    heartbeat_msg: "--heartbeat--",
    error: (reply) => console.log(reply.op, reply.ref, reply.code, reply.reason),
});
const subscription = client.subscribe(
    "chat",
    "broadcast",
    (data, message) => {
        const id: string | null = message.id;
        if (typeof data === "string") console.log(data, id, message.facility, message.audience);
        else console.log(data.byteLength, message.data_b64);
    },
    {
        subscribed: (reply) => console.log(reply.facility, reply.recovered, reply.presence?.users),
        recovered: (ok) => console.log(ok),
        error: (reply) => console.log(reply.code),
        presence: (present) => console.log(present.users.join(), present.anonymous + present.connections),
        join: (user, event) => console.log(user.toUpperCase(), event.op, event.facility),
        leave: (user) => console.log(user),
    },
);
console.log(subscription.facility, subscription.audience, subscription.last_id);
subscription.unsubscribe((error) => console.log(error?.reason));
client.subscribe("notices", "user");
client.publish("chat", "group", "Hello", (error, id) => console.log(error?.code, id));
client.publish("chat", "session", new Uint8Array([0xff]).buffer);
console.log(client.get_state(), client.is_connected());
client.close();

// @ts-expect-error: the URL is required
WS4Redis({});
// @ts-expect-error: a misspelt option
WS4Redis({ uri: "ws://localhost/ws/x", recieve_message: () => {} });
// @ts-expect-error: seconds are a number
WS4Redis.connect({ uri: "ws://localhost/ws/", heartbeat_interval: "5" });
// @ts-expect-error: not an audience
client.subscribe("chat", "everybody");
// @ts-expect-error: the ws4redis.v2 client has no send_message
client.send_message("Hello");
// @ts-expect-error: a number is no payload
client.publish("chat", "broadcast", 42);
// @ts-expect-error: the id is a string or null
const wrong: number = subscription.last_id;
// @ts-expect-error: recovered() is told a boolean
client.subscribe("chat", "broadcast", () => {}, { recovered: (ok: string) => console.log(ok) });
console.log(wrong);

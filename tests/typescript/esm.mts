// The ES module (ws4redis.mjs and ws4redis.d.mts): the default export, and
// the named WS4Redis and connect.
import WS4Redis, { WS4Redis as Named, connect } from "twisted-ws4redis";

const client: WS4Redis.Client = connect({ uri: "ws://localhost/ws/" });
client.subscribe("chat", "broadcast", (data) => console.log(data));
Named.connect({ uri: "ws://localhost/ws/" }).close();
WS4Redis({ uri: "ws://localhost/ws/foobar?subscribe-broadcast" }).close();
// @ts-expect-error: connect takes options
connect();

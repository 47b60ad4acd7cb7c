// A page's script (no module): WS4Redis is the global the script tag defines.
/// <reference types="twisted-ws4redis" />
const pageClient = WS4Redis.connect({ uri: "ws://localhost/ws/" });
pageClient.subscribe("news", "session", (data) => console.log(data));
// @ts-expect-error: publish needs data
pageClient.publish("news", "broadcast");

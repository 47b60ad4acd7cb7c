// Types of ws4redis.mjs: the client of ws4redis.d.ts as an ES module.
import WS4Redis = require("./ws4redis.js");

export default WS4Redis;
export { WS4Redis };
export declare const connect: typeof WS4Redis.connect;

// MQTT.js (npm "mqtt") against the example broker: `node mqttjs_client.js PORT BASE`.
// Prints one JSON object: what each client saw.  Run by tests/test_mqtt5_broker.py,
// with NODE_PATH pointing at an `npm install mqtt` folder.
"use strict";
const mqtt = require("mqtt");

const [port, base] = process.argv.slice(2);
const url = `mqtt://127.0.0.1:${port}`;
const result = { received: [], connack: null };

function connect(options) {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...options });
    client.once("connect", (connack) => resolve([client, connack]));
    client.once("error", reject);
  });
}

async function main() {
  // A subscriber that lets the broker alias topics (MQTT.js resolves them itself).
  const [sub, connack] = await connect({
    protocolVersion: 5, clientId: `js-sub-${base}`,
    properties: { topicAliasMaximum: 5, receiveMaximum: 10 },
  });
  result.connack = connack.properties || {};
  const done = new Promise((resolve) => {
    sub.on("message", (topic, payload, packet) => {
      const p = packet.properties || {};
      result.received.push({
        topic, payload: payload.toString(), qos: packet.qos, retain: packet.retain,
        userProperties: p.userProperties || null, contentType: p.contentType || null,
        subscriptionIdentifier: p.subscriptionIdentifier || null,
        messageExpiryInterval: p.messageExpiryInterval === undefined ? null
          : p.messageExpiryInterval,
      });
      if (result.received.length === 4) resolve();
    });
  });
  await sub.subscribeAsync(`${base}/#`, {
    qos: 2, rap: true, properties: { subscriptionIdentifier: 5 },
  });
  // An MQTT 5.0 publisher that aliases its topics (as the broker's maximum allows).
  const [pub5] = await connect({
    protocolVersion: 5, clientId: `js-pub5-${base}`, autoAssignTopicAlias: true,
  });
  await pub5.publishAsync(`${base}/a`, "one", {
    qos: 2, properties: {
      userProperties: { k: "v" }, contentType: "text/plain", messageExpiryInterval: 60,
    },
  });
  await pub5.publishAsync(`${base}/a`, "two", { qos: 1 });  // sent with its alias only
  await pub5.publishAsync(`${base}/b`, "retained", { qos: 1, retain: true });
  // An MQTT 3.1.1 publisher on the same broker.
  const [pub4] = await connect({ protocolVersion: 4, clientId: `js-pub4-${base}` });
  await pub4.publishAsync(`${base}/c`, "from 3.1.1", { qos: 1 });
  await Promise.race([done, new Promise((r) => setTimeout(r, 8000))]);
  await pub5.publishAsync(`${base}/b`, "", { qos: 1, retain: true });  // clean up
  for (const client of [sub, pub5, pub4]) await client.endAsync();
  console.log(JSON.stringify(result));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

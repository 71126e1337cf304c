// Drives messd's MCP endpoint with the official TypeScript SDK client:
// lists the tools, then a requestor creates a request, an executor claims
// and completes it, and the requestor reads the result. Prints one JSON
// summary line for the Go test to check.
//
//   node client.mjs http://127.0.0.1:PORT/mcp REQUESTOR_KEY EXECUTOR_KEY
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, requestorKey, executorKey] = process.argv.slice(2);

async function connect(key) {
  const client = new Client({ name: "mess-ts-test", version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${key}` } },
  });
  await client.connect(transport);
  // Listing caches the output schemas: the client then validates every
  // structured result against them.
  await client.listTools();
  return client;
}

function structured(name, res) {
  if (res.isError) throw new Error(`${name}: ${res.content[0].text}`);
  return res.structuredContent;
}

async function call(client, name, args) {
  return structured(name, await client.callTool({ name, arguments: args }));
}

const requestor = await connect(requestorKey);
const executor = await connect(executorKey);
try {
  const { tools } = await requestor.listTools();
  const created = await call(requestor, "create_request", {
    intent: "Check whether the back door is locked",
    context: ["the green door by the garden"],
    response_hint: ["confirmation"],
  });
  const claimed = await call(executor, "claim_request", { ref: created.ref, note: "on my way" });
  const completed = await call(executor, "complete_request", { ref: created.ref, text: "locked", content: [{ confirmation: true }] });
  const { thread } = await call(requestor, "get_request", { ref: created.ref });
  const waited = await call(requestor, "wait_for_change", { ref: created.ref, after_seq: 0, timeout_seconds: 1 });
  const conflict = await requestor.callTool({ name: "claim_request", arguments: { ref: created.ref } });
  console.log(JSON.stringify({
    tools: tools.map((t) => t.name).sort(),
    ref: created.ref,
    claimed: claimed.status,
    completed: completed.status,
    final: thread.status,
    executor: thread.executor_id,
    messages: thread.messages.length,
    waited: { changed: waited.changed, status: waited.status, new_messages: waited.new_messages.length },
    conflict: { isError: conflict.isError, body: JSON.parse(conflict.content[0].text) },
  }));
} finally {
  await requestor.close();
  await executor.close();
}

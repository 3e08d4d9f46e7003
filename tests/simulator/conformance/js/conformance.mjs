// Drives the real, unmodified @fal-ai/client against the klingflow simulator for one conformance
// scenario and prints its outcome as one JSON line (tests/simulator/conformance/drivers.py reads it).
// Usage: SIM_URL=http://127.0.0.1:PORT FAL_KEY=... node conformance.mjs <scenario> '<json args>'
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { createFalClient } from "@fal-ai/client";

const SIM = process.env.SIM_URL.replace(/\/$/, "");
const ENDPOINT = "fal-ai/kling-video/o3/pro/video-to-video/edit";

// fal's three hosts onto the simulator: REST (storage), queue, and the sync run base (/run).
function toSimulator(url) {
  return url
    .replace(/^https:\/\/rest\.fal\.ai/, SIM)
    .replace(/^https:\/\/queue\.fal\.run/, SIM)
    .replace(/^https:\/\/fal\.run/, `${SIM}/run`);
}

function makeClient(query = {}) {
  return createFalClient({
    credentials: process.env.FAL_KEY,
    fetch: (url, init) => fetch(toSimulator(String(url)), init),
    requestMiddleware: async (request) => {
      if (!Object.keys(query).length || request.method.toUpperCase() !== "POST") return request;
      const url = new URL(request.url);
      for (const [k, v] of Object.entries(query)) url.searchParams.set(k, String(v));
      return { ...request, url: url.toString() };
    },
  });
}

const statusOf = (update) => update.status;
const logsOf = (updates) => updates.flatMap((u) => (u.logs ?? []).map((l) => l.message));

async function failure(promise) {
  try {
    await promise;
    return null;
  } catch (error) {
    return { status: error.status ?? null, body: error.body ?? null };
  }
}

async function waitStatus(fal, requestId, wanted) {
  for (let i = 0; i < 400; i++) {
    const s = await fal.queue.status(ENDPOINT, { requestId, logs: false });
    if (s.status === wanted) return s;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`request ${requestId} never reached ${wanted}`);
}

const scenarios = {
  async upload({ path, content_type }) {
    const file = new File([readFileSync(path)], basename(path), { type: content_type });
    return { url: await makeClient().storage.upload(file) };
  },

  async subscribe({ input }) {
    const updates = [];
    const result = await makeClient().subscribe(ENDPOINT, {
      input, logs: true, pollInterval: 50, onQueueUpdate: (u) => updates.push(u),
    });
    return { request_id: result.requestId, data: result.data, statuses: updates.map(statusOf), logs: logsOf(updates) };
  },

  async submit_status_result({ input }) {
    const fal = makeClient();
    const ticket = await fal.queue.submit(ENDPOINT, { input });
    const statuses = [ticket.status];
    for (;;) {
      const s = await fal.queue.status(ENDPOINT, { requestId: ticket.request_id, logs: true });
      statuses.push(s.status);
      if (s.status === "COMPLETED") break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const result = await fal.queue.result(ENDPOINT, { requestId: ticket.request_id });
    return { request_id: ticket.request_id, statuses, data: result.data };
  },

  async stream_status({ input }) {
    const fal = makeClient();
    const ticket = await fal.queue.submit(ENDPOINT, { input });
    const stream = await fal.queue.streamStatus(ENDPOINT, { requestId: ticket.request_id, logs: true });
    const updates = [];
    stream.on("data", (u) => updates.push(u));
    const done = await stream.done();
    const result = await fal.queue.result(ENDPOINT, { requestId: ticket.request_id });
    // subscribe's streaming mode reads the same route, on a second request
    const viaSubscribe = await fal.subscribe(ENDPOINT, { input, logs: true, mode: "streaming" });
    return {
      request_id: ticket.request_id,
      statuses: updates.map(statusOf),
      final_status: done.status,
      logs: logsOf(updates),
      data: result.data,
      subscribe_data: viaSubscribe.data,
    };
  },

  async cancel({ running_input, queued_input }) {
    const fal = makeClient();
    const running = await fal.queue.submit(ENDPOINT, { input: running_input });
    await waitStatus(fal, running.request_id, "IN_PROGRESS");
    const queued = await fal.queue.submit(ENDPOINT, { input: queued_input });
    const before = (await fal.queue.status(ENDPOINT, { requestId: queued.request_id })).status;
    await fal.queue.cancel(ENDPOINT, { requestId: queued.request_id });
    await fal.queue.cancel(ENDPOINT, { requestId: running.request_id });
    const out = {};
    for (const [name, id] of [["queued", queued.request_id], ["running", running.request_id]]) {
      await waitStatus(fal, id, "COMPLETED");
      out[name] = await failure(fal.queue.result(ENDPOINT, { requestId: id }));
    }
    return { queued_status_before: before, queued: out.queued, running: out.running };
  },

  async run({ input }) {
    const result = await makeClient().run(ENDPOINT, { input });
    return { request_id: result.requestId, data: result.data };
  },

  async webhook({ input, webhook_url }) {
    const ticket = await makeClient().queue.submit(ENDPOINT, { input, webhookUrl: webhook_url });
    return { request_id: ticket.request_id };
  },

  async invalid({ input }) {
    return { error: await failure(makeClient().subscribe(ENDPOINT, { input, pollInterval: 50 })) };
  },

  async queue_full({ input, max_queue_length }) {
    const ticket = await makeClient({ fal_max_queue_length: max_queue_length }).queue.submit(ENDPOINT, { input });
    return { request_id: ticket.request_id };
  },
};

const [name, rawArgs] = process.argv.slice(2);
const outcome = await scenarios[name](JSON.parse(rawArgs ?? "{}"));
process.stdout.write(JSON.stringify(outcome) + "\n");

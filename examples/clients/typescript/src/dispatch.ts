// The loop an e-mail or SMS dispatcher runs against consentd, in TypeScript
// on Node (@grpc/grpc-js, types generated from the proto by
// proto-loader-gen-types: `npm run build`).
//
// Before a send, one CanSendBatch for the whole send list, with a deadline;
// each allowed message gets its unsubscribe link in the List-Unsubscribe and
// List-Unsubscribe-Post headers (RFC 8058 one-click). The dispatcher's own
// writes (a complaint it turns into a withdrawal) come first, and the batch
// carries the largest sequence they answered as `minSequence`, so whichever
// node answers has applied them. UNAVAILABLE and RESOURCE_EXHAUSTED are
// retried with exponential backoff and jitter inside the deadline; when no
// answer comes, nothing is sent (fail closed).
//
//   node dist/src/dispatch.js --target 127.0.0.1:50051 \
//     --send-list send-list.json --withdraw carol@example.com=marketing
//
// Prints one JSON line per recipient:
// {"contact_id", "channel", "brand", "send": true|false,
//  "reason": "REASON_GRANTED" | ... | "NO_ANSWER", "headers": {...}}

import * as fs from "node:fs";
import * as path from "node:path";
import { parseArgs } from "node:util";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import type { ProtoGrpcType } from "../gen/consent";
import type { CanSendBatchResponse__Output } from "../gen/consent/v1/CanSendBatchResponse";
import type { CanSendResponse__Output } from "../gen/consent/v1/CanSendResponse";
import type { ConsentsServiceClient } from "../gen/consent/v1/ConsentsService";
import type { EligibilityServiceClient } from "../gen/consent/v1/EligibilityService";
import type { WithdrawRequest } from "../gen/consent/v1/WithdrawRequest";
import type { WithdrawResponse__Output } from "../gen/consent/v1/WithdrawResponse";

/** One message the dispatcher would send. */
interface Recipient {
  contact_id: string;
  channel: string;
  brand: string;
  purpose?: string;
}

/** Worth another try: the server is overloaded or not reachable right now. */
const RETRYABLE = new Set([
  grpc.status.UNAVAILABLE,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.DEADLINE_EXCEEDED,
]);

const log = (m: string) => process.stderr.write(`${m}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs `call(deadline)` until it answers, a non-retryable error, or the
 * deadline (ms since the epoch) passes; `undefined` when no answer came.
 */
async function withRetries<T>(
  call: (deadline: Date) => Promise<T>,
  deadline: number,
): Promise<T | undefined> {
  let backoff = 50;
  for (let attempt = 1; ; attempt++) {
    if (Date.now() >= deadline) {
      log(`no answer before the deadline after ${attempt - 1} attempts`);
      return undefined;
    }
    try {
      return await call(new Date(deadline));
    } catch (e) {
      const err = e as grpc.ServiceError;
      if (!RETRYABLE.has(err.code)) throw err;
      log(`attempt ${attempt}: ${grpc.status[err.code]}: ${err.details}`);
    }
    // Full jitter: a random share of the backoff, never past the deadline;
    // the backoff doubles up to one second.
    await sleep(Math.min(Math.random() * backoff, Math.max(0, deadline - Date.now())));
    backoff = Math.min(backoff * 2, 1000);
  }
}

/** A unary call as a promise. */
function unary<Req, Res>(
  method: (
    req: Req,
    md: grpc.Metadata,
    opts: grpc.CallOptions,
    cb: grpc.requestCallback<Res>,
  ) => grpc.ClientUnaryCall,
  req: Req,
  md: grpc.Metadata,
  deadline: Date,
): Promise<Res> {
  return new Promise((resolve, reject) =>
    method(req, md, { deadline }, (err, res) => (err ? reject(err) : resolve(res as Res))),
  );
}

/**
 * RFC 2369 and RFC 8058: the link, and that a POST to it unsubscribes;
 * RFC 2919: the list the message belongs to (stable per deciding consent
 * and brand, so mailbox providers can tell one list from another).
 */
function listHeaders(result: CanSendResponse__Output): Record<string, string> {
  return {
    "List-Id": `<${result.listId}>`,
    "List-Unsubscribe": `<${result.unsubscribeUrl}>`,
    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
  };
}

export async function dispatch(
  consents: ConsentsServiceClient,
  eligibility: EligibilityServiceClient,
  sendList: Recipient[],
  withdrawals: Array<[string, string]>,
  deadlineMs: number,
  md: grpc.Metadata,
): Promise<object[]> {
  const deadline = Date.now() + deadlineMs;

  // The dispatcher's own writes first (here: complaints it received).
  let newest = 0n;
  for (const [contact, consent] of withdrawals) {
    const request: WithdrawRequest = {
      contactId: contact,
      consentId: consent,
      source: "SOURCE_API",
      evidence: { reason: "complaint" },
      // Retried with the same key, a withdrawal is recorded once.
      idempotencyKey: `complaint:${contact}:${consent}`,
    };
    const answer = await withRetries(
      (d) =>
        unary<WithdrawRequest, WithdrawResponse__Output>(
          consents.Withdraw.bind(consents),
          request,
          md,
          d,
        ),
      deadline,
    );
    if (answer === undefined) {
      // Not acknowledged: send nothing to that person in this run.
      log(`withdrawal of ${contact} not acknowledged`);
      sendList = sendList.filter((r) => r.contact_id !== contact);
      continue;
    }
    const sequence = BigInt(answer.sequence);
    if (sequence > newest) newest = sequence;
  }

  const batch = {
    checks: sendList.map((r) => ({
      contactId: r.contact_id,
      channel: r.channel,
      brand: r.brand,
      purpose: r.purpose ?? "",
      includeUnsubscribe: true,
    })),
    // Read your own writes, on whichever node answers (uint64: a string).
    minSequence: newest.toString(),
  };
  const answer: CanSendBatchResponse__Output | undefined = await withRetries(
    (d) => unary(eligibility.CanSendBatch.bind(eligibility), batch, md, d),
    deadline,
  );
  return sendList.map((r, i) => {
    if (answer === undefined) {
      // Fail closed: no answer is never a yes.
      return { ...r, send: false, reason: "NO_ANSWER", headers: {} };
    }
    const result = answer.results[i];
    return {
      ...r,
      send: result.allowed,
      reason: result.reason,
      decided_by: result.decidedBy,
      error: result.error,
      headers: result.allowed ? listHeaders(result) : {},
    };
  });
}

async function main() {
  const { values } = parseArgs({
    options: {
      target: { type: "string" },
      "send-list": { type: "string" },
      withdraw: { type: "string", multiple: true, default: [] },
      "deadline-ms": { type: "string", default: "2000" },
      token: { type: "string" },
      "proto-dir": {
        type: "string",
        default: path.join(__dirname, "..", "..", "..", "..", "..", "proto"),
      },
    },
  });
  if (!values.target || !values["send-list"]) {
    throw new Error("usage: dispatch --target HOST:PORT --send-list FILE [--withdraw C=CONSENT]...");
  }
  const definition = protoLoader.loadSync("consent/v1/consent.proto", {
    includeDirs: [values["proto-dir"]!],
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const proto = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
  const credentials = grpc.credentials.createInsecure();
  const consents = new proto.consent.v1.ConsentsService(values.target, credentials);
  const eligibility = new proto.consent.v1.EligibilityService(values.target, credentials);
  const md = new grpc.Metadata();
  if (values.token) md.set("authorization", `Bearer ${values.token}`);

  const sendList: Recipient[] = JSON.parse(fs.readFileSync(values["send-list"], "utf8"));
  const withdrawals = (values.withdraw as string[]).map((w) => {
    const at = w.indexOf("=");
    return [w.slice(0, at), w.slice(at + 1)] as [string, string];
  });
  const decisions = await dispatch(
    consents,
    eligibility,
    sendList,
    withdrawals,
    Number(values["deadline-ms"]),
    md,
  );
  for (const d of decisions) process.stdout.write(`${JSON.stringify(d)}\n`);
  consents.close();
  eligibility.close();
}

main().catch((e) => {
  log(String(e));
  process.exit(1);
});

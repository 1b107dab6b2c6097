// Drives @elastic/opamp-client-node against an opampd endpoint for a fixed number of successful
// sends, then prints one JSON line summarising what the client sent and what the server answered.
// Usage: node node-client.js <endpoint> <sends> <service.name>
'use strict';

const {channel} = require('node:diagnostics_channel');
const {createOpAMPClient, AgentCapabilities} = require('@elastic/opamp-client-node');

const [endpoint, sendsArg, serviceName] = process.argv.slice(2);
const wanted = Number(sendsArg || 5);
const REPORT_FULL_STATE = 1n;

const sends = [];
const failures = [];

const client = createOpAMPClient({
    endpoint,
    heartbeatIntervalSeconds: 0.2,
    capabilities:
        AgentCapabilities.AgentCapabilities_ReportsStatus |
        AgentCapabilities.AgentCapabilities_ReportsHeartbeat,
    diagEnabled: true,
});
client.setAgentDescription({
    identifyingAttributes: {'service.name': serviceName || 'opampd-interop'},
    nonIdentifyingAttributes: {'os.type': 'linux'},
});

const done = new Promise((resolve) => {
    channel('opamp-client.send.success').subscribe(({a2s, s2a}) => {
        sends.push({
            seq: Number(a2s.sequenceNum),
            full: Boolean(a2s.agentDescription),
            reportFullState: (s2a.flags & REPORT_FULL_STATE) !== 0n,
            serverCapabilities: Number(s2a.capabilities),
            echoedUid: Buffer.from(s2a.instanceUid).equals(Buffer.from(a2s.instanceUid)),
            error: s2a.errorResponse ? s2a.errorResponse.errorMessage : null,
        });
        if (sends.length >= wanted) resolve();
    });
    channel('opamp-client.send.fail').subscribe(({err}) => {
        failures.push(String(err && err.message ? err.message : err));
        if (failures.length >= 3) resolve();
    });
});

const timeout = setTimeout(() => {
    failures.push('timed out');
    finish();
}, 30000);

async function finish() {
    clearTimeout(timeout);
    await client.shutdown().catch(() => {});
    const uid = Buffer.from(client.getInstanceUid()).toString('hex');
    process.stdout.write(JSON.stringify({instanceUid: uid, sends, failures}) + '\n');
    process.exit(failures.length ? 1 : 0);
}

client.start();
done.then(finish);

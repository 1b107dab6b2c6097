// Drives @elastic/opamp-client-node against an opampd endpoint for a fixed number of successful
// sends, then prints one JSON line summarising what the client sent and what the server answered.
// Usage: node node-client.js <endpoint> <sends> <service.name>
'use strict';

const {createOpAMPClient, AgentCapabilities} = require('@elastic/opamp-client-node');
const {runUntil} = require('./harness.js');

const [endpoint, sendsArg, serviceName] = process.argv.slice(2);
const wanted = Number(sendsArg || 5);
const REPORT_FULL_STATE = 1n;

const sends = [];

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

runUntil(client, {
    onSuccess: (a2s, s2a) => {
        sends.push({
            seq: Number(a2s.sequenceNum),
            full: Boolean(a2s.agentDescription),
            reportFullState: (s2a.flags & REPORT_FULL_STATE) !== 0n,
            serverCapabilities: Number(s2a.capabilities),
            echoedUid: Buffer.from(s2a.instanceUid).equals(Buffer.from(a2s.instanceUid)),
            error: s2a.errorResponse ? s2a.errorResponse.errorMessage : null,
        });
        return sends.length >= wanted;
    },
    extra: () => ({sends}),
});

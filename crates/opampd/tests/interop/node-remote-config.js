// Drives @elastic/opamp-client-node with remote config against an opampd endpoint: the client
// accepts and reports remote config, applies (records) every config it is sent and reports it
// APPLIED, and stops `after` successful sends past its first receipt (or after 30 s). Prints one
// JSON line: what it received and, per send, whether the reply carried a config.
// Usage: node node-remote-config.js <endpoint> <after> <service.name>
'use strict';

const {
    createOpAMPClient,
    AgentCapabilities,
    RemoteConfigStatuses,
} = require('@elastic/opamp-client-node');
const {runUntil} = require('./harness.js');

const [endpoint, afterArg, serviceName] = process.argv.slice(2);
const after = Number(afterArg || 4);
const REPORT_FULL_STATE = 1n;

const received = [];
const sends = [];
let sendsAfterReceipt = 0;

const hex = (bytes) => Buffer.from(bytes).toString('hex');

const client = createOpAMPClient({
    endpoint,
    heartbeatIntervalSeconds: 0.2,
    capabilities:
        AgentCapabilities.AgentCapabilities_ReportsStatus |
        AgentCapabilities.AgentCapabilities_ReportsHeartbeat |
        AgentCapabilities.AgentCapabilities_AcceptsRemoteConfig |
        AgentCapabilities.AgentCapabilities_ReportsRemoteConfig,
    diagEnabled: true,
    onMessage: ({remoteConfig}) => {
        if (!remoteConfig) return;
        const files = {};
        const map = (remoteConfig.config && remoteConfig.config.configMap) || {};
        for (const [name, file] of Object.entries(map)) {
            files[name] = {body: Buffer.from(file.body).toString('utf8'), contentType: file.contentType};
        }
        received.push({hash: hex(remoteConfig.configHash), files});
        client.setRemoteConfigStatus({
            status: RemoteConfigStatuses.RemoteConfigStatuses_APPLIED,
            lastRemoteConfigHash: remoteConfig.configHash,
        });
    },
});
client.setAgentDescription({
    identifyingAttributes: {'service.name': serviceName || 'opampd-interop'},
    nonIdentifyingAttributes: {'os.type': 'linux'},
});

runUntil(client, {
    onSuccess: (a2s, s2a) => {
        const status = a2s.remoteConfigStatus;
        sends.push({
            seq: Number(a2s.sequenceNum),
            reportFullState: (s2a.flags & REPORT_FULL_STATE) !== 0n,
            remoteConfig: Boolean(s2a.remoteConfig),
            offersRemoteConfig: (Number(s2a.capabilities) & 2) !== 0,
            reportedHash: status ? hex(status.lastRemoteConfigHash || new Uint8Array()) : null,
            reportedStatus: status ? Number(status.status) : null,
            error: s2a.errorResponse ? s2a.errorResponse.errorMessage : null,
        });
        return received.length > 0 && ++sendsAfterReceipt >= after;
    },
    extra: () => ({received, sends}),
});

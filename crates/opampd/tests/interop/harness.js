// What the interop scripts share: run a started OpAMP client until `isDone(s2a, a2s)` says so
// after a successful send (or 3 failed sends, or 30 s), then shut it down and print one JSON
// line `{instanceUid, failures, ...extra()}`; exit 1 when anything failed.
'use strict';

const {channel} = require('node:diagnostics_channel');

function runUntil(client, {onSuccess, extra}) {
    const failures = [];
    let finished = false;
    const finish = async () => {
        if (finished) return;
        finished = true;
        clearTimeout(timeout);
        await client.shutdown().catch(() => {});
        const instanceUid = Buffer.from(client.getInstanceUid()).toString('hex');
        process.stdout.write(JSON.stringify({instanceUid, failures, ...extra()}) + '\n');
        process.exit(failures.length ? 1 : 0);
    };
    const timeout = setTimeout(() => {
        failures.push('timed out');
        finish();
    }, 30000);
    channel('opamp-client.send.success').subscribe(({a2s, s2a}) => {
        if (onSuccess(a2s, s2a)) finish();
    });
    channel('opamp-client.send.fail').subscribe(({err}) => {
        failures.push(String(err && err.message ? err.message : err));
        if (failures.length >= 3) finish();
    });
    client.start();
}

module.exports = {runUntil};

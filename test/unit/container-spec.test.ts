import assert from "node:assert/strict";
import { test } from "node:test";
import { Secret } from "../../src/config/secret.ts";
import { createOptions } from "../../src/docker/dockerode-driver.ts";
import type { RunnerSpec } from "../../src/docker/driver.ts";
import { LABEL, runnerLabels } from "../../src/docker/labels.ts";
import { testConfig } from "../helpers/config.ts";

const spec = (over: Partial<RunnerSpec> = {}): RunnerSpec => ({
  name: "jitrunner-default-0123456789",
  image: "runner:1",
  jitConfig: new Secret("eyJmYWtlIjp0cnVlfQ=="),
  env: { FOO: "bar" },
  labels: runnerLabels({ pool: "default", host: "h1", runnerName: "jitrunner-default-0123456789", demandId: "1-1" }),
  isolation: "privileged",
  capDrop: ["SYS_RESOURCE"],
  resources: { cpus: 1.5, memoryMb: 2048, pidsLimit: 512 },
  networkMode: "none",
  mounts: [{ source: "/srv/cache", target: "/cache", readOnly: true }],
  ...over,
});

test("a runner container: JIT config in env, our labels, an anonymous volume for dockerd, limits", () => {
  const o = createOptions(spec());
  assert.ok(o.Env?.includes("ACTIONS_RUNNER_INPUT_JITCONFIG=eyJmYWtlIjp0cnVlfQ=="));
  assert.ok(o.Env?.includes("FOO=bar"));
  assert.equal(o.Labels?.[LABEL.managedBy], "jitrunner");
  assert.equal(o.Labels?.[LABEL.pool], "default");
  assert.equal(o.Labels?.[LABEL.host], "h1");
  // A volume of its own, named after the runner and labelled as ours (known as ours if left behind).
  assert.deepEqual(o.HostConfig!.Mounts, [
    { Type: "volume", Source: "jitrunner-default-0123456789-var-lib-docker", Target: "/var/lib/docker", VolumeOptions: { Labels: o.Labels } },
  ]);
  const h = o.HostConfig!;
  assert.equal(h.NanoCpus, 1.5e9);
  assert.equal(h.Memory, 2048 * 1024 * 1024);
  assert.equal(h.PidsLimit, 512);
  assert.equal(h.NetworkMode, "none");
  assert.deepEqual(h.Binds, ["/srv/cache:/cache:ro"]);
  assert.equal(h.AutoRemove, false, "the worker removes it, with its volume");
});

test("isolation profiles: privileged, capabilities, sysbox", () => {
  const priv = createOptions(spec()).HostConfig!;
  assert.equal(priv.Privileged, true);
  const caps = createOptions(spec({ isolation: "capabilities" })).HostConfig!;
  assert.equal(caps.Privileged, undefined);
  assert.deepEqual(caps.CapAdd, ["ALL"]);
  assert.deepEqual(caps.CapDrop, ["SYS_RESOURCE"]);
  assert.deepEqual(caps.SecurityOpt, ["seccomp=unconfined", "apparmor=unconfined"]);
  assert.deepEqual((caps as Record<string, unknown>).MaskedPaths, []);
  assert.deepEqual((caps as Record<string, unknown>).ReadonlyPaths, []);
  const sysbox = createOptions(spec({ isolation: "sysbox" })).HostConfig!;
  assert.equal(sysbox.Runtime, "sysbox-runc");
  assert.equal(sysbox.Privileged, undefined);
  assert.equal(sysbox.CapAdd, undefined);
});

test("on a cgroup v2 engine a runner gets a cgroup namespace of its own, whatever the engine's default (sysbox makes its own); on v1 none is named", () => {
  for (const isolation of ["privileged", "capabilities"] as const) {
    assert.equal((createOptions(spec({ isolation }), { cgroupV2: true }).HostConfig as Record<string, unknown>).CgroupnsMode, "private", isolation);
    assert.equal((createOptions(spec({ isolation }), { cgroupV2: false }).HostConfig as Record<string, unknown>).CgroupnsMode, undefined, isolation);
  }
  assert.equal((createOptions(spec({ isolation: "sysbox" }), { cgroupV2: true }).HostConfig as Record<string, unknown>).CgroupnsMode, undefined);
});

test("pool env cannot replace the JIT config; pool config has no way to set our labels", () => {
  const o = createOptions(spec({ env: { ACTIONS_RUNNER_INPUT_JITCONFIG: "hijack" } }));
  const jit = o.Env!.filter((e) => e.startsWith("ACTIONS_RUNNER_INPUT_JITCONFIG="));
  assert.deepEqual(jit, ["ACTIONS_RUNNER_INPUT_JITCONFIG=eyJmYWtlIjp0cnVlfQ=="]);
  assert.throws(
    () => testConfig({ pools: [{ name: "p", labels: ["a"], image: "x", labels_override: {} } as never] }),
    /Unrecognized key/,
  );
});

test("a pool that mounts a container engine socket is refused at load", () => {
  // The socket itself, or any directory that holds one.
  for (const source of ["/var/run/docker.sock", "/run/docker.sock", "/var/run/", "/run", "/", "/run/containerd", "/srv/x/docker.sock"]) {
    const attempt = () => testConfig({ pools: [{ name: "p", labels: ["a"], image: "x", mounts: [{ source, target: "/x" }] }] });
    assert.throws(attempt, /container engine socket/, source);
  }
  assert.doesNotThrow(() => testConfig({ pools: [{ name: "p", labels: ["a"], image: "x", mounts: [{ source: "/srv/cache", target: "/x" }] }] }));
});

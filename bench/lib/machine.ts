/** What the numbers were measured on: no host names, no paths. */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { release } from "node:os";
import type Docker from "dockerode";

export interface Machine {
  cpus: number;
  cpuModel: string;
  memoryGib: string;
  os: string;
  kernel: string;
  node: string;
  docker: string;
  dockerStorage: string;
  cgroup: string;
  redis: string;
}

export async function describeMachine(docker: Docker, redisVersion: string): Promise<Machine> {
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  const meminfo = readFileSync("/proc/meminfo", "utf8");
  const memKib = Number(/^MemTotal:\s+(\d+)/m.exec(meminfo)?.[1] ?? Number.NaN);
  const osRelease = readFileSync("/etc/os-release", "utf8");
  const version = await docker.version();
  const info = (await docker.info()) as { Driver?: string; CgroupVersion?: string };
  return {
    cpus: Number(execFileSync("nproc").toString().trim()),
    cpuModel: /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? "unknown",
    memoryGib: (memKib / 1024 / 1024).toFixed(1),
    os: /^PRETTY_NAME="?([^"\n]+)"?/m.exec(osRelease)?.[1] ?? "unknown",
    kernel: release(),
    node: process.version,
    docker: version.Version,
    dockerStorage: info.Driver ?? "unknown",
    cgroup: info.CgroupVersion ? `v${info.CgroupVersion}` : "unknown",
    redis: redisVersion,
  };
}

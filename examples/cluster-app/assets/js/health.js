// Formats the JSON of GET /health for the page.
export function describe(health) {
  const peers = health.nodes.length ? health.nodes.join(", ") : "no peers";
  return `${health.node} at ${health.commit.slice(0, 12)}: ${peers}` +
    (health.migrated ? ` (migrated ${health.migrated.slice(0, 12)})` : "");
}

export async function fetchHealth() {
  const response = await fetch("/health", { cache: "no-store" });
  if (!response.ok) throw new Error(`GET /health: ${response.status}`);
  return response.json();
}

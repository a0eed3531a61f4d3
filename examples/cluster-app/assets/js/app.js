import { describe, fetchHealth } from "./health.js";

// Shows this node's view of the cluster, refreshed every two seconds.
async function refresh() {
  const out = document.getElementById("health");
  try {
    out.textContent = describe(await fetchHealth());
  } catch (error) {
    out.textContent = String(error);
  }
}

refresh();
setInterval(refresh, 2000);

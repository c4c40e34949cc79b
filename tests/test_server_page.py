"""The web page in a real browser (Debian's headless Chromium through Playwright): a
message typed and sent comes back streamed in several pieces, the fact it told shows up
in the memory panel, Edit changes it, and Forget removes it from the page and the bank. Screenshots go to
the test's temporary directory. Skipped when Playwright or Chromium is missing."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from mlx_synapse.memory.bank import MemoryBank  # noqa: E402
from mlx_synapse.server import ServerConfig, create_app  # noqa: E402

from .server_util import live, tiny_model_dir  # noqa: E402
from .test_memory_bank import BagOfWords  # noqa: E402


def _chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH (apt-get install -y chromium)")


def test_page_chats_streams_and_forgets(tmp_path, smollm2_dir):
    from mlx_synapse.loader import load

    browser_path = _chromium()
    model, tok = load(str(tiny_model_dir(tmp_path, smollm2_dir)), backend="numpy")
    bank = MemoryBank(tmp_path / "m.db", BagOfWords(), backend="numpy")
    app = create_app(model, tok, bank, ServerConfig(default_max_tokens=24))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with live(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(url + "/")
        page.fill("#user", "pat")
        page.dispatch_event("#user", "change")
        page.wait_for_selector("#memories li")  # "(nothing yet)"
        # count the updates of the reply's text as they arrive
        page.evaluate("""() => { window.updates = 0; new MutationObserver((ms) => {
            for (const m of ms) if (m.target.closest && m.target.closest('.assistant') || m.target.parentElement
                && m.target.parentElement.closest('.assistant')) window.updates++; })
            .observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true}); }""")
        page.fill("#input", "My dog is called Pickle.")
        page.keyboard.press("Enter")
        page.wait_for_function("() => !document.getElementById('go').disabled && document.querySelector('.assistant')",
                               timeout=120_000)
        reply = page.inner_text(".assistant")
        assert reply.strip(), "no reply text"
        assert page.evaluate("window.updates") >= 3  # several streamed pieces, not one final write
        page.wait_for_selector("#memories li[data-id]")
        page.screenshot(path=str(shots / "1-reply-and-memory.png"))
        assert page.inner_text("#memories").startswith("My dog is called Pickle.")
        assert [e.text for e in bank.list(user="pat")] == ["My dog is called Pickle."]

        page.once("dialog", lambda d: d.accept("My dog is called Pickles."))
        page.click("#memories li[data-id] button:has-text('Edit')")
        page.wait_for_function("() => document.querySelector('#memories li[data-id] span').textContent.endsWith('Pickles.')")
        assert [e.text for e in bank.list(user="pat")] == ["My dog is called Pickles."]

        page.click("#memories li[data-id] button:has-text('Forget')")
        page.wait_for_selector("#memories li:not([data-id])")
        page.screenshot(path=str(shots / "2-forgotten.png"))
        assert bank.list(user="pat") == []
        browser.close()
    assert sorted(f.name for f in shots.iterdir()) == ["1-reply-and-memory.png", "2-forgotten.png"]

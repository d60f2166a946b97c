"""End to end in real headless Chromium: the page opens a (fake) webcam playing real faces, streams frames
to the server over the WebSocket and draws boxes and labels."""

import shutil
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from emolens.live.synthetic import background, sample_face

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="Chromium and chromedriver not installed (Debian: chromium chromium-driver)"
)


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 15) -> Path:
    """Frames (BGR, even sizes) as a YUV4MPEG2 4:2:0 file, Chromium's fake-camera format."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for fr in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(fr, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def fake_camera_clip(path: Path, n: int = 30) -> Path:
    bg = background((640, 480), seed=1)
    face = cv2.resize(sample_face(), (200, 210))
    frames = []
    for t in range(n):
        fr = bg.copy()
        x = 200 + int(30 * np.sin(t / 5))
        fr[120:330, x : x + 200] = face
        frames.append(fr)
    return write_y4m(path, frames)


@pytest.fixture
def server(tmp_path):
    uvicorn = pytest.importorskip("uvicorn")
    from emolens.live.settings import PipelineSettings
    from emolens.serve import ServeSettings, create_app

    app = create_app(ServeSettings(data_dir=tmp_path / "data", pipeline=PipelineSettings(detector="haar")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    th.join(timeout=10)


def _chrome(tmp_path, *extra):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--autoplay-policy=no-user-gesture-required",
        f"--user-data-dir={tmp_path / 'profile'}",
        *extra,
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def test_page_shows_boxes_and_labels_from_fake_webcam(server, tmp_path):
    clip = fake_camera_clip(tmp_path / "cam.y4m")
    driver = _chrome(
        tmp_path,
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
    )
    try:
        driver.set_page_load_timeout(30)
        driver.get(server)
        driver.find_element("id", "start").click()
        deadline = time.time() + 60
        state = {}
        while time.time() < deadline:
            state = driver.execute_script("return window.emolens")
            if state["boxesDrawn"] >= 3 and "happiness" in state["lastLabels"]:
                break
            time.sleep(0.3)
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert state["repliesReceived"] >= 3, state
        assert state["boxesDrawn"] >= 3 and "happiness" in state["lastLabels"], state
        # Replies keep arriving while we look, and a frame where Haar misses the face clears the overlay and shows
        # "no face" for a moment, so read the label list and the overlay's painted pixels in one script (JS is
        # single-threaded: both come from the same reply) and retry until a reply with the face is on screen.
        snap = {}
        for _ in range(100):
            snap = driver.execute_script(
                "const c=document.getElementById('overlay');const d=c.getContext('2d').getImageData(0,0,c.width,"
                "c.height).data;let n=0;for(let i=3;i<d.length;i+=4){if(d[i]>0)n++;}"
                "return {shown: document.getElementById('labels').textContent, painted: n};"
            )
            if "happiness" in snap["shown"] and snap["painted"] > 500:
                break
            time.sleep(0.1)
        assert "happiness" in snap["shown"], snap
        assert snap["painted"] > 500, snap  # the overlay canvas really has the box and label painted on it
        # Stop clears the picture: no stale boxes, labels or bars stay on screen (nor come back with a late reply)
        driver.find_element("id", "stop").click()
        time.sleep(1.0)
        after = driver.execute_script(
            "const c=document.getElementById('overlay');const d=c.getContext('2d').getImageData(0,0,c.width,"
            "c.height).data;let n=0;for(let i=3;i<d.length;i+=4){if(d[i]>0)n++;}"
            "return {shown: document.getElementById('labels').textContent, painted: n,"
            " bars: document.getElementById('bars').textContent};"
        )
        assert after["painted"] == 0 and after["shown"] == "" and "no face" in after["bars"], after
        # every face of a picture gets its own named bars under "Emotions now" (here six, as in a group photo)
        names = driver.execute_script(
            "const p={neutral:0.1,happiness:0.9};"
            "drawBars([0,1,2,3,4,5].map(i=>({box:{x:100-i*10,y:0,w:5,h:5},label:'happiness',confidence:0.9,"
            "track_id:null,probs:p})));"
            "return [...document.querySelectorAll('#bars .face')].map(e=>e.textContent);"
        )
        assert names == [f"face {i}: happiness 90%" for i in range(1, 7)], names
    finally:
        driver.quit()


def test_browser_plays_the_annotated_video_of_a_job(server, tmp_path):
    """The server's annotated.mp4 (H.264, fragmented MP4 through PyAV) plays in Chromium's <video>."""
    import httpx

    from emolens.live.synthetic import sample_video

    with open(sample_video(tmp_path / "in.mp4", n_frames=30), "rb") as f:
        job = httpx.post(server + "v1/video", files={"file": ("in.mp4", f, "video/mp4")}, timeout=30).json()["id"]
    for _ in range(600):
        if httpx.get(server + f"v1/video/{job}").json()["status"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert httpx.get(server + f"v1/video/{job}").json()["status"] == "done"
    driver = _chrome(tmp_path)
    try:
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(30)
        driver.get(server)
        state = driver.execute_async_script(
            """const done = arguments[arguments.length - 1];
            const v = document.createElement('video');
            v.muted = true;
            v.onerror = () => done({error: v.error && v.error.code});
            v.ontimeupdate = () => {
                if (v.currentTime > 0.3) done({w: v.videoWidth, h: v.videoHeight, t: v.currentTime});
            };
            v.src = arguments[0];
            document.body.appendChild(v);
            v.play().catch(e => done({error: String(e)}));""",
            server + f"v1/video/{job}/annotated.mp4",
        )
    finally:
        driver.quit()
    assert "error" not in state, state
    assert state["w"] == 640 and state["h"] == 480 and state["t"] > 0.3


def test_docs_page_renders_offline(server, tmp_path):
    """/docs loads Swagger UI from the server itself (this Chromium has no internet)."""
    driver = _chrome(tmp_path)
    try:
        driver.set_page_load_timeout(30)
        driver.get(server + "docs")
        deadline, title = time.time() + 30, ""
        while time.time() < deadline and "emolens" not in title:
            title = driver.execute_script(
                "const t=document.querySelector('.swagger-ui .info .title');return t?t.textContent:''"
            )
            time.sleep(0.3)
        assert "emolens" in title
        assert "/v1/predict" in driver.page_source
    finally:
        driver.quit()

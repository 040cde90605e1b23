"""The deck's interactive demo: generate text, watch attention, compare layer outputs.

    pip install -e ".[app]"
    streamlit run app.py

It serves this machine only (127.0.0.1, set in .streamlit/config.toml beside this file). Pick one
of the runs found under runs/ in the sidebar, or train the default tiny model there if you have
none; then type a prompt, set the sampling controls and generate. A checkpoint can also be opened
by its path, but only while the app is served on this machine alone.

The page is minigpt/app/page.py, its views minigpt/app/views.py, their charts minigpt/charts.py.
"""

from minigpt.app.page import main

main()

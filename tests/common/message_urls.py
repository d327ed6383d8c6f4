from django.contrib import messages
from django.http import HttpResponse, HttpResponseRedirect
from django.urls import path


def add(request):
    messages.success(request, "Saved.")
    return HttpResponseRedirect("/show/")


def show(request):
    return HttpResponse("|".join(str(m) for m in messages.get_messages(request)))


def plain(request):
    return HttpResponse("ok")


urlpatterns = [path("add/", add), path("show/", show), path("plain/", plain)]
